"""comptune.decomposition"""
