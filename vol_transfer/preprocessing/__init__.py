"""vol_transfer.preprocessing"""
