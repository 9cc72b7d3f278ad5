"""metamock: an EC2 instance metadata service for ECS tasks, Fargate and laptops."""

__version__ = "0.1.0"
