"""vol_transfer.training"""
