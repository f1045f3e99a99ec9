"""The k-NN probe of pre-training: the vote written out, and the features it votes on."""
import math

import torch

from engine_for_probe import extract_features, knn_classify
from models import create_pretrain_model


def test_knn_vote_matches_the_written_out_rule():
    torch.manual_seed(0)
    ref, labels, query = torch.randn(30, 6), torch.randint(0, 3, (30,)), torch.randn(5, 6)
    k, temperature = 4, 0.1
    votes = knn_classify(ref, labels, query, num_classes=3, k=k, temperature=temperature)
    for q in range(5):
        cos = [float(torch.dot(query[q], ref[i]) / (query[q].norm() * ref[i].norm()))
               for i in range(30)]
        nearest = sorted(range(30), key=lambda i: -cos[i])[:k]
        expected = [0.0, 0.0, 0.0]
        for i in nearest:
            expected[int(labels[i])] += math.exp(cos[i] / temperature)
        assert torch.allclose(votes[q], torch.tensor(expected), rtol=1e-4)


def test_knn_finds_the_class_of_clustered_features():
    centres = torch.eye(4) * 5
    labels = torch.arange(4).repeat_interleave(10)
    ref = centres[labels] + 0.1 * torch.randn(40, 4)
    query = centres + 0.1 * torch.randn(4, 4)
    assert knn_classify(ref, labels, query, num_classes=4, k=5).argmax(1).tolist() == [0, 1, 2, 3]


def test_features_are_the_mean_of_the_unmasked_encoder_tokens():
    model = create_pretrain_model("pretrain_videomae_micro_patch16", img_size=32, all_frames=4)
    videos, target = torch.randn(3, 3, 4, 32, 32), torch.tensor([0, -1, 2])
    feats, labels = extract_features(model.encoder, [(videos, target, None, [])],
                                     torch.device("cpu"))
    assert labels.tolist() == [0, 2]  # the unreadable item (label -1) is left out
    with torch.no_grad():
        model.eval()
        x = model.encoder.patch_embed(videos[[0, 2]])
        x = x + model.encoder.position_embedding((2, 2, 2), x.device, x.dtype)
        for blk in model.encoder.blocks:
            x = blk(x)
        expected = model.encoder.norm(x).mean(1)
    assert torch.allclose(feats, expected, atol=1e-5)
