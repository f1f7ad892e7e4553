"""The MNIST CNN of pytorch/examples (mnist/main.py) on synthetic images: two convolutions, max pooling,
dropout, log_softmax and F.nll_loss, trained with optim.Adadelta and a StepLR schedule.

A plain PyTorch script; tests/test_drop_in_scripts.py runs it as it is and with its imports swapped to handgrad's.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)  # (N, 32, 26, 26)
        x = F.relu(x)
        x = self.conv2(x)  # (N, 64, 24, 24)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)  # (N, 64, 12, 12)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)  # (N, 9216)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def synthetic_batches(steps, batch_size=4, seed=0):
    """MNIST-shaped batches: images (N, 1, 28, 28) in [0, 1], labels (N,)."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch_size, 1, 28, 28, generator=generator),
             torch.randint(10, (batch_size,), generator=generator)) for _ in range(steps)]


def build(seed=1):
    """main()'s set-up: the seed, the network, Adadelta and the learning rate's schedule."""
    torch.manual_seed(seed)
    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, batches, log):
    model.train()
    for batch_idx, (data, target) in enumerate(batches):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        scheduler.step()  # the example steps it once an epoch; here every batch is an epoch
        log(batch_idx, loss)


def print_loss(step, loss):
    print(f"step {step}: loss {loss.item():.6f}")


def main(steps=3):
    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, synthetic_batches(steps), log=print_loss)


if __name__ == "__main__":
    main()
