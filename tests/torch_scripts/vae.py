"""The variational auto-encoder of pytorch/examples (vae/main.py) on synthetic images: F.relu, the
reparameterisation trick, torch.sigmoid, and a loss of F.binary_cross_entropy plus the KL divergence written
with tensor ops, trained with optim.Adam.

A plain PyTorch script; tests/test_drop_in_scripts.py runs it as it is and with its imports swapped to handgrad's.
"""

import torch
from torch import nn, optim
from torch.nn import functional as F


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # see Appendix B from VAE paper: Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def synthetic_batches(steps, batch_size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch_size, 1, 28, 28, generator=generator), None) for _ in range(steps)]


def build(seed=1):
    torch.manual_seed(seed)
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer, None


def train(model, optimizer, scheduler, batches, log):
    model.train()
    for batch_idx, (data, _) in enumerate(batches):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        optimizer.step()
        log(batch_idx, loss)


def print_loss(step, loss):
    print(f"step {step}: loss {loss.item():.6f}")


def main(steps=3):
    model, optimizer, _ = build()
    train(model, optimizer, None, synthetic_batches(steps), log=print_loss)


if __name__ == "__main__":
    main()
