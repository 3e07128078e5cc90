"""vol_transfer.sampling"""
