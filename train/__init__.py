"""Training: rollouts, unpaired labels, ULRec-P (SFT) and ULRec (KTO + alpha * SFT), the loop, the `ulrec` CLI.

Importing ``train`` loads nothing heavy; torch, transformers and TRL load when a stage runs.
"""
