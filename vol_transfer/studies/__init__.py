"""vol_transfer.studies"""
