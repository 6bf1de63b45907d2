// See gloo/rendezvous/store.h: the declarations c10d's headers need.
#pragma once
#include <gloo/rendezvous/store.h>
