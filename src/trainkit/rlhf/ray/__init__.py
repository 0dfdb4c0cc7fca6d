"""Online RL on Ray: the policy and the rollout engines as actors on a placement group.

``ray.enabled=true`` in an RL config makes :func:`trainkit.rlhf.trainers.ppo.train` run
the RL loop (:mod:`trainkit.rlhf.trainers.rl_loop`) with the Ray backend instead of the
single-process one; nothing else in the config changes. Modules:

* :mod:`~trainkit.rlhf.ray.config`: the ``ray`` config section (address, resources per
  role, colocation, placement strategy);
* :mod:`~trainkit.rlhf.ray.cluster`: start/attach Ray, the placement group, spawning
  actors, turning a dead actor into a one-line error naming its role, ``num_cpus=0``
  helper tasks, actor-process helpers (threads, a free port);
* :mod:`~trainkit.rlhf.ray.learners`: ``PolicyWorker`` (actor + reference + critic,
  FSDP2 replicas, PPO update, checkpoints), ``ReferenceWorker``, ``CriticWorker``;
* :mod:`~trainkit.rlhf.ray.workers`: ``RolloutWorker`` (HF or vLLM engine, eval) and
  ``RewardWorker``;
* :mod:`~trainkit.rlhf.ray.shards`: cutting batches by prompt groups, joining rollouts;
* :mod:`~trainkit.rlhf.ray.trainer`: ``RayBackend``, the loop's backend over these actors.

Importing this package does not import ray.
"""
