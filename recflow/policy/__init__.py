"""The recommendation policy: TF-Agents per-arm contextual bandits trained on logged feedback.

* :mod:`recflow.policy.logged_data`: impressions and their feedback -> per-slot bandit decisions (numpy only).
* :mod:`recflow.policy.agents`: the TF-Agents agent factory.
* :mod:`recflow.policy.trainer`: ``train_policy`` (train + PolicySaver export) and ``load_policy``.
* :mod:`recflow.policy.scorer`: the reloaded policy that builds slates and gives action probabilities for OPE.

Importing this package does not import TensorFlow; the submodules that need it do.
"""

from recflow.policy.config import PolicyConfig, RewardWeights

__all__ = ["PolicyConfig", "RewardWeights"]
