"""Run storage: manifests, images, the outcome record and schema, run directories."""
