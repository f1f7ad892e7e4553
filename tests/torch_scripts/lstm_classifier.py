"""A text classifier in the usual PyTorch style: embeddings, spatial dropout (nn.Dropout2d over the embedding
channels, dropping a channel at every step), an LSTM and a linear head on the last hidden state, trained with
nn.CrossEntropyLoss and optim.AdamW, on synthetic token sequences.

A plain PyTorch script; tests/test_drop_in_scripts.py runs it as it is and with its imports swapped to handgrad's.
"""

import torch
import torch.nn as nn
import torch.optim as optim


class LSTMClassifier(nn.Module):
    def __init__(self, vocab_size, embedding_dim, hidden_dim, num_classes, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.spatial_dropout = nn.Dropout2d(dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, num_classes)

    def forward(self, tokens):
        x = self.embedding(tokens)  # (N, T, E)
        x = x.permute(0, 2, 1).unsqueeze(3)  # (N, E, T, 1): each embedding channel is one Dropout2d channel
        x = self.spatial_dropout(x)
        x = x.squeeze(3).permute(0, 2, 1)  # (N, T, E)
        output, (h_n, c_n) = self.lstm(x)  # h_n (1, N, H)
        return self.fc(h_n[-1])  # (N, num_classes)


def synthetic_batches(steps, batch_size=6, length=7, vocab_size=40, num_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(vocab_size, (batch_size, length), generator=generator),
             torch.randint(num_classes, (batch_size,), generator=generator)) for _ in range(steps)]


def build(seed=1):
    torch.manual_seed(seed)
    model = LSTMClassifier(vocab_size=40, embedding_dim=10, hidden_dim=12, num_classes=3)
    optimizer = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    return model, optimizer, None


def train(model, optimizer, scheduler, batches, log):
    criterion = nn.CrossEntropyLoss()
    model.train()
    for step, (tokens, labels) in enumerate(batches):
        optimizer.zero_grad()
        loss = criterion(model(tokens), labels)
        loss.backward()
        optimizer.step()
        log(step, loss)


def print_loss(step, loss):
    print(f"step {step}: loss {loss.item():.6f}")


def main(steps=3):
    model, optimizer, _ = build()
    train(model, optimizer, None, synthetic_batches(steps), log=print_loss)


if __name__ == "__main__":
    main()
