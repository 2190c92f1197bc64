-- ISO 8583: the original data elements (MTI, STAN, field 7: 20 digits) of
-- the message an attempt owes a reversal of, when the link knew them (it
-- sent the message and got no usable answer). Recovery's reversal names
-- them in field 90, so a host that finds the original by field 90 (not by
-- field 37) finds it, rather than answering 25 "no such record", which
-- reads as nothing to reverse (src/core/payflow.c recover_reversal). Empty
-- when unknown (a restart between the send and its answer).
ALTER TABLE attempts ADD COLUMN orig_data TEXT NOT NULL DEFAULT '';
