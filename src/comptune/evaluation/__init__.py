"""comptune.evaluation"""
