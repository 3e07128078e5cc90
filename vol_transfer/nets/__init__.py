"""vol_transfer.nets"""
