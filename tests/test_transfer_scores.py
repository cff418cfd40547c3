import numpy as np
import torch

from minima import transfer_scores
from minima.evaluation import eval_mode, to_input


def test_features_are_the_heads_inputs_and_outputs_its_softmax(tiny_model, source):
    x = source.x_train[:20]
    tiny_model.train()
    features, probabilities = transfer_scores.features_and_outputs(tiny_model, x, batch_size=8)
    assert features.shape == (20, tiny_model.fc.in_features) and not tiny_model.fc._forward_hooks, "hook removed"
    assert tiny_model.training, "the model's mode is restored"
    with eval_mode(tiny_model), torch.no_grad():
        logits = tiny_model(to_input(x))
        head = tiny_model.fc(torch.from_numpy(features))
    # the same head on the same inputs: equal up to float32 rounding of a sum over in_features terms
    torch.testing.assert_close(head, logits, rtol=1e-5, atol=1e-5)
    assert np.allclose(probabilities, torch.softmax(logits, 1).numpy(), atol=1e-6)


def test_every_score_of_a_run_is_a_finite_number(tiny_model, source):
    features, probabilities = transfer_scores.features_and_outputs(tiny_model, source.x_train)
    row = transfer_scores.scores(features, probabilities, source.y_train.numpy())
    assert set(row) == set(transfer_scores.SCORES) and all(np.isfinite(v) for v in row.values()), row
