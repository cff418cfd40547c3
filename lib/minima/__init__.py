"""minima: do flatter, more robust pretraining minima make better starting points for finetuning?"""
import warnings

__version__ = "0.1.0"

# Third-party warnings a reader of the study cannot act on, each filtered by its message and the module that
# raises it. Here, because importing minima is the first thing every notebook (and every Dask worker) does.
# linear_operator, which curvlinops imports, decorates its functions with torch.jit.script (deprecated in torch)
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script")
# torch.func's vmap (curvlinops' batched Hessian products) has no batching rule yet for one op of adaptive pooling
warnings.filterwarnings("ignore", r"There is a performance drop because we have not yet implemented the batching rule",
                        UserWarning, r"torch\.nn\.functional")
