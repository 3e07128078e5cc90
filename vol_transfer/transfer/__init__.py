"""vol_transfer.transfer"""
