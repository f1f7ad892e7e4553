"""The word-level language model of pytorch/examples (word_language_model: model.py's RNNModel with an LSTM,
main.py's training loop) on a synthetic corpus: nn.Embedding, a two-layer nn.LSTM with dropout between the
layers, nn.Dropout, tied input and output embeddings, nn.init.uniform_, nn.CrossEntropyLoss, truncated
backpropagation through time, nn.utils.clip_grad_norm_ and the example's hand-written SGD update.

A plain PyTorch script; tests/test_drop_in_scripts.py runs it as it is and with its imports swapped to handgrad's.
"""

import torch
import torch.nn as nn


class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        # "Using the Output Embedding to Improve Language Models" (Press & Wolf 2016)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))  # (T, N, ninp)
        output, hidden = self.rnn(emb, hidden)  # (T, N, nhid)
        output = self.drop(output)
        decoded = self.decoder(output)  # (T, N, ntoken)
        return decoded.view(-1, self.ntoken), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous()  # (steps, bsz)


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].view(-1)
    return data, target


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


NTOKENS, BATCH_SIZE, BPTT = 30, 4, 5


def synthetic_batches(steps, seed=0):
    """A corpus of token ids cut into ``steps`` windows of BPTT steps over BATCH_SIZE streams."""
    generator = torch.Generator().manual_seed(seed)
    corpus = torch.randint(NTOKENS, (BATCH_SIZE * (steps * BPTT + 1),), generator=generator)
    train_data = batchify(corpus, BATCH_SIZE)
    return [get_batch(train_data, i, BPTT) for i in range(0, train_data.size(0) - 1, BPTT)]


def build(seed=1):
    torch.manual_seed(seed)
    model = RNNModel(NTOKENS, ninp=12, nhid=12, nlayers=2, dropout=0.2, tie_weights=True)
    return model, None, None


def train(model, optimizer, scheduler, batches, log, lr=20.0, clip=0.25):
    criterion = nn.CrossEntropyLoss()
    model.train()
    hidden = model.init_hidden(BATCH_SIZE)
    for batch, (data, targets) in enumerate(batches):
        # Starting each batch, we detach the hidden state from how it was previously produced.
        # If we didn't, the model would try backpropagating all the way to start of the dataset.
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()

        # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        log(batch, loss)


def print_loss(step, loss):
    print(f"step {step}: loss {loss.item():.6f}")


def main(steps=3):
    model, _, _ = build()
    train(model, None, None, synthetic_batches(steps), log=print_loss)


if __name__ == "__main__":
    main()
