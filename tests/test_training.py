"""The local training loop's optimizer: the same updates as ``torch.optim.SGD``, without the
``torch._dynamo`` import that ``torch.optim`` costs every fresh ClientApp process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from flbackdoor.training import SGD

from conftest import REPO


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.0, 1e-3)])
def test_sgd_matches_torch_optim_sgd_step_for_step(momentum, weight_decay):
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ref.load_state_dict(ours.state_dict())
    opt = SGD(ours.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum,
                              weight_decay=weight_decay)
    for step in range(6):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            o.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=f"step {step}")
    assert not torch.equal(ours[0].weight, torch.nn.Linear(6, 5).weight)  # it did move


def test_a_training_step_does_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from flbackdoor.config import ClientConfig, DatasetConfig\n"
        "from flbackdoor.training import Normalizer, train\n"
        "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n"
        "x = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)\n"
        "y = torch.randint(0, 10, (16,))\n"
        "train(model, x, y, ClientConfig(momentum=0.9), Normalizer(DatasetConfig(), torch.device('cpu')))\n"
        "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
