"""AWS model of a cluster: plan, apply and destroy by tags, and the bootstrap it passes to EC2."""
