"""comptune.inspection"""
