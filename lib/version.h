/* version.h - the release number both binaries report. */
#ifndef TPCKV_VERSION_H
#define TPCKV_VERSION_H

#define TPCKV_VERSION "0.3.0"

#endif
