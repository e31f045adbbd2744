"""The placeholder alt-texts the text rules reject by default."""

# Placeholder alt-texts: ALIGN §3 names "alt img" as a frequent generic text; the rest are the
# defaults that CMSs, editors and image tools write when an author gives none (WordPress
# attachment titles, "untitled" from editors, "spacer"/"pixel" from table layouts, "thumbnail"
# from galleries). Matched whole, after lowercasing and turning _ and - into spaces.
DEFAULT_PLACEHOLDERS = (
    "alt",
    "alt img",
    "alt image",
    "alt text",
    "banner",
    "blank",
    "click here",
    "default",
    "dummy",
    "featured image",
    "icon",
    "image",
    "image description",
    "image not found",
    "img alt",
    "img",
    "logo",
    "missing image",
    "n a",
    "no image",
    "no image available",
    "no photo",
    "none",
    "null",
    "photo",
    "pic",
    "picture",
    "pixel",
    "placeholder",
    "spacer",
    "thumb",
    "thumbnail",
    "undefined",
    "untitled",
    "untitled image",
)
