"""What archives are made of: codecs and decoders, tar headers, the ezpz manifest."""
