"""comptune.report"""
