"""Gates: every byte that comes from outside ipo (files, server answers, paths, images,
cached values, text for the terminal) passes through one of these modules, so that each
kind of boundary is checked in one place and every caller gets the check for free."""
