//! The 256 words of invite codes: one byte each, short, lowercase ASCII,
//! distinct, easy to say and to type. The order is part of the code format
//! (a word's index is its value); never reorder, only replace a word by an
//! unused one if it proves confusing.

/// Word `i` encodes the byte `i`.
pub(super) const WORDS: [&str; 256] = [
    "acid", "acorn", "actor", "adobe", "agent", "alarm", "album", "alley", "amber", "angle", "ankle", "apple", "apron",
    "arena", "armor", "arrow", "aspen", "atlas", "attic", "autumn", "badge", "bagel", "baker", "bamboo", "banjo",
    "barley", "barn", "basil", "basket", "beach", "beacon", "beaver", "bench", "berry", "bison", "blade", "blanket",
    "blossom", "bonus", "border", "bottle", "bounty", "bramble", "branch", "bread", "breeze", "brick", "bridge",
    "bronze", "brook", "broom", "bucket", "buffalo", "bugle", "bundle", "butter", "button", "cabin", "cactus", "camel",
    "candle", "canoe", "canvas", "canyon", "carbon", "cargo", "carpet", "carrot", "castle", "cedar", "cellar",
    "cereal", "chalk", "charm", "cherry", "chess", "chimney", "cider", "cinema", "circle", "citrus", "clay", "cliff",
    "clock", "cloud", "clover", "cobalt", "cocoa", "comet", "copper", "coral", "cotton", "cougar", "coyote", "crane",
    "crater", "cricket", "crystal", "cupola", "curtain", "cycle", "dahlia", "daisy", "delta", "denim", "desert",
    "diesel", "dingo", "dolphin", "donkey", "dragon", "drum", "eagle", "easel", "echo", "eclipse", "elbow", "ember",
    "emerald", "engine", "falcon", "feather", "fennel", "ferry", "fiddle", "field", "fig", "flute", "forest", "fossil",
    "fountain", "fox", "garden", "garlic", "gecko", "ginger", "glacier", "globe", "gondola", "grape", "gravel",
    "guitar", "hammer", "harbor", "harvest", "hazel", "helmet", "heron", "hickory", "honey", "horizon", "island",
    "ivory", "jacket", "jaguar", "jasmine", "jelly", "jigsaw", "juniper", "kayak", "kettle", "kiwi", "koala", "ladder",
    "lagoon", "lantern", "lemon", "lentil", "lily", "linen", "lizard", "lobster", "locket", "lotus", "lumber",
    "magnet", "mango", "maple", "marble", "meadow", "melon", "mesa", "meteor", "mirror", "mitten", "monsoon", "mosaic",
    "muffin", "mustard", "nectar", "nickel", "noodle", "nutmeg", "oasis", "ocean", "olive", "onion", "orbit", "orchid",
    "otter", "oyster", "paddle", "palace", "panda", "papaya", "parrot", "pebble", "pepper", "piano", "pickle",
    "pigeon", "pillow", "pine", "planet", "plum", "pocket", "pony", "poppy", "potato", "prairie", "pretzel", "pumpkin",
    "puzzle", "quartz", "quill", "rabbit", "radish", "raven", "reef", "ribbon", "river", "robin", "rocket", "saddle",
    "salmon", "sandal", "satin", "shadow", "shovel", "silver", "sketch", "sparrow", "spinach", "spruce", "squid",
    "stable", "summit", "sunset", "swan", "tulip", "tundra", "turnip", "velvet", "violin", "walnut", "willow",
];
