// The load engine (see issue 4).
