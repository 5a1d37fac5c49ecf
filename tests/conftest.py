import torch

# One intra-op thread: these tests use tiny models, where a second thread only adds overhead,
# and on a loaded 2-core machine two threads per process thrash.
torch.set_num_threads(1)
