"""vol_transfer.evaluation"""
