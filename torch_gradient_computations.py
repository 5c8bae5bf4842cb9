"""Reference gradients from PyTorch autograd: the spec's skeleton with the scores of eqs. (1-3)
filled in.

network_params = {'W': [W1, W2], 'b': [b1, b2]} with W1 (m, d), b1 (m, 1), W2 (K, m), b2 (K, 1);
X is d x n; y holds the n labels. lam adds the L2 term lam * sum(W**2) of eq. (7) (0 by default,
as in the spec's skeleton).
"""
import numpy as np
import torch


def ComputeGradsWithTorch(X, y, network_params, lam=0.0):
    Xt = torch.from_numpy(X)
    L = len(network_params['W'])
    W = [torch.tensor(network_params['W'][i], requires_grad=True) for i in range(L)]
    b = [torch.tensor(network_params['b'][i], requires_grad=True) for i in range(L)]

    apply_relu = torch.nn.ReLU()
    apply_softmax = torch.nn.Softmax(dim=0)

    # the scoring function of eqs. (1-3): hidden layers with ReLU, then a linear layer; scores are K
    # x n
    H = Xt
    for i in range(L - 1):
        H = apply_relu(W[i] @ H + b[i])
    scores = W[L - 1] @ H + b[L - 1]

    # apply SoftMax to each column of scores
    P = apply_softmax(scores)

    # the loss of eq. (8), averaged over the columns, plus the optional L2 term of eq. (7)
    n = X.shape[1]
    loss = torch.mean(-torch.log(P[y, np.arange(n)]))
    if lam:
        loss = loss + lam * sum(torch.sum(w * w) for w in W)

    loss.backward()

    grads = {'W': [w.grad.numpy() for w in W], 'b': [bb.grad.numpy() for bb in b]}
    return grads
