"""models.ResNet8 against the same network written in PyTorch, from the same weights:
loss, every gradient, batch-norm running statistics and a few AdamW steps, in training and
evaluation mode."""

import numpy as np
import pytest

import gpunn
from gpunn import functional as F
from gpunn import nn

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of this file")
TF = torch.nn.functional

pytestmark = pytest.mark.skipif(
    not hasattr(nn, "BatchNorm2d"), reason="needs nn.BatchNorm2d (issue 15 item 1)"
)


class _TorchBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        tnn = torch.nn
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Sequential(
                tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = TF.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return TF.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class _TorchResNet8(torch.nn.Module):
    def __init__(self, cin, classes, width):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, width, 3, 1, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.layer1 = _TorchBlock(width, width, 1)
        self.layer2 = _TorchBlock(width, 2 * width, 2)
        self.layer3 = _TorchBlock(2 * width, 4 * width, 2)
        self.fc = torch.nn.Linear(4 * width, classes)

    def forward(self, x):
        x = TF.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer3(self.layer2(self.layer1(x))).mean(dim=(2, 3)))


def test_resnet8_has_pytorchs_parameter_names_and_shapes():
    ours, theirs = gpunn.models.ResNet8(3, 10), _TorchResNet8(3, 10, 16)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want


@pytest.mark.parametrize("size", [8, 12])
def test_resnet8_trains_like_torch_from_the_same_weights(backend, size):
    torch.manual_seed(0)
    theirs = _TorchResNet8(1, 4, 4).double()
    ours = gpunn.models.ResNet8(1, 4, width=4).to(backend).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=0.01)
    opt_g = gpunn.optim.AdamW(ours.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, size, size)), rng.integers(0, 4, 6)
    xg, yg = gpunn.tensor(x, backend=backend), gpunn.tensor(y, backend=backend)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for step in range(3):
        opt_t.zero_grad()
        opt_g.zero_grad()
        loss_t = TF.cross_entropy(theirs(xt), yt)
        loss_g = F.cross_entropy(ours(xg), yg)
        loss_t.backward()
        loss_g.backward()
        np.testing.assert_allclose(float(loss_g.numpy()), loss_t.item(), rtol=1e-9)
        grads_t = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
        for k, p in ours.named_parameters():
            np.testing.assert_allclose(
                p.grad.numpy(), grads_t[k], rtol=1e-7, atol=1e-10, err_msg=f"step {step}: {k}"
            )
        opt_t.step()
        opt_g.step()
    for k, v in theirs.state_dict().items():  # weights and running statistics
        np.testing.assert_allclose(
            ours.state_dict()[k].numpy(), v.numpy(), rtol=1e-7, atol=1e-10, err_msg=k
        )
    theirs.eval()
    ours.eval()
    np.testing.assert_allclose(ours(xg).numpy(), theirs(xt).detach().numpy(), rtol=1e-7, atol=1e-10)
