-- wrk script: send the IMDSv2 token given in the TOKEN environment variable with every request.
wrk.headers["X-aws-ec2-metadata-token"] = os.getenv("TOKEN")
