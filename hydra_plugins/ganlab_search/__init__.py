"""ganlab's Hydra sweeper `hydra/sweeper=search`: an Optuna study whose trials are the sweep's jobs (ganlab.search).

It lives under the `hydra_plugins` namespace package because Hydra instantiates sweepers from there alone.
"""
