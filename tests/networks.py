"""Networks that several test modules build."""
import torch

from minima import data, models
from minima.config import Study
from minima.evaluation import recompute_bn


def random_model(study: Study, source: data.Task, seed: int) -> torch.nn.Module:
    """A distinct random network of the study per seed, with non-trivial batchnorm weights and running statistics."""
    torch.manual_seed(seed)
    model = models.model_for(study, source.n_classes).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return recompute_bn(model, source.x_train).eval()
