-- Images as stations record them, completed: where each came from (a
-- download's URL, validators, digest source and signer; a capture's master
-- stick), as the station's `images.provenance`, and whether the station
-- removed the row (a run's provisional image, replaced by the real image
-- once the import that the run followed ended). A removed row is kept,
-- marked, so that an older version applied later cannot bring it back
-- (rows are replaced only by a higher `seq`); the hub never lists it as an
-- image of the station.

ALTER TABLE station_images
    ADD COLUMN provenance jsonb,
    ADD COLUMN removed boolean NOT NULL DEFAULT false;
