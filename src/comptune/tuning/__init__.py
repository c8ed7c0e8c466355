"""comptune.tuning"""
