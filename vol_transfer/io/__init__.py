"""vol_transfer.io"""
