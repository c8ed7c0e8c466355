"""comptune.corpus"""
