"""Upload stores: the interface and names (:mod:`.base`), the folder and S3 stores beside
each other (:mod:`.folder`, :mod:`.s3`, plus :mod:`.unusable` for a wrong configuration),
and the factory on top (:mod:`.factory`). Import from the module that defines a name."""
