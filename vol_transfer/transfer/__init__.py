"""vol_transfer.transfer — reuse a trained network for a new task.

- :mod:`~vol_transfer.transfer.groups`: layer groups (ordered name patterns) and the parameter table.
- :mod:`~vol_transfer.transfer.checkpoint`: ``save_checkpoint`` / ``load_checkpoint`` (weights + JSON
  metadata, safe loading only), ``build_from_checkpoint``.
- :mod:`~vol_transfer.transfer.adapt`: ``transfer_weights`` (copy by name, adapt input channels,
  replace the head) with a ``TransferReport``.
- :mod:`~vol_transfer.transfer.freezing`: ``set_frozen``, ``freeze_first`` and ``FreezingSchedule``
  (models 1–5, warm-up, gradual unfreezing, explicit phases; BN policy "update" or "freeze").
- :mod:`~vol_transfer.transfer.lr_groups`: optimizer parameter groups with discriminative learning
  rates, and ``rebuild_optimizer`` that keeps the state of parameters that stay trainable.
"""
