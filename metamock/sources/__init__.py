"""Where the facts come from: the ECS endpoints (`ecs`) or an embedded sample task (`local`)."""
