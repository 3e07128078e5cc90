"""vol_transfer.inference"""
