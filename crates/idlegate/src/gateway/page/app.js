// The live page's script (placeholder: the page's author replaces it).
"use strict";
