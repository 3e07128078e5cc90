"""Public datasets: where to get them and how to download them safely."""
