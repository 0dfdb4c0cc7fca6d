"""Online RL on Ray: the policy and the rollout engines as actors on a placement group.

``ray.enabled=true`` in an RL config runs :func:`trainkit.rlhf.ray.trainer.train_ray`
instead of the single-process loop; nothing else in the config changes. Modules:

* :mod:`~trainkit.rlhf.ray.config`: the ``ray`` config section (address, resources per
  role, colocation, placement strategy);
* :mod:`~trainkit.rlhf.ray.cluster`: start/attach Ray, the placement group, spawning
  actors, turning a dead actor into a one-line error naming its role, ``num_cpus=0``
  helper tasks;
* :mod:`~trainkit.rlhf.ray.workers`: ``PolicyWorker`` (actor + reference + critic,
  experience and PPO update, checkpoints) and ``RolloutWorker`` (HF or vLLM engine);
* :mod:`~trainkit.rlhf.ray.trainer`: the loop.

Importing this package does not import ray.
"""
