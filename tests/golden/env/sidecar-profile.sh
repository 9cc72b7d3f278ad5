# metamock env export: generated, do not edit
export AWS_CONTAINER_CREDENTIALS_RELATIVE_URI='/v2/credentials/6e2b7c2a'
export AWS_EC2_METADATA_SERVICE_ENDPOINT='http://127.0.0.1:1338/'
export AWS_REGION='us-west-2'
