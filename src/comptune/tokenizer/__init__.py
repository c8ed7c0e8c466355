"""comptune.tokenizer"""
