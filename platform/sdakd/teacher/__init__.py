"""The teacher: a frozen wrapper (`frozen`), its pretraining when no weights are given (`pretrain`), and where
both meet the caches (`cache`: the configured weights, or a pretrained teacher cached by what it depends on).

`frozen` sits below the methods (they distil from it); `pretrain` and `cache` above them (pretraining is a
method). This package imports none of its modules, so that order holds.
"""
