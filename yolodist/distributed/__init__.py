"""The only package that touches torch.distributed, DataParallel/DDP/SyncBN and the launcher's variables."""
