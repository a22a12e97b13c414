-- Orthanc auto-routing to bonexr: once a study is stable (no new instance for Orthanc's
-- StableAge seconds), send its CR and DX series to the "bonexr" modality by C-STORE.
--
-- Install: list this file in Orthanc's configuration, "LuaScripts": ["bonexr-autoroute.lua"],
-- with bonexr in "DicomModalities": { "bonexr": ["BONEXR", "bonexr-host", 11112] }.
-- For DICOMweb instead, set BONEXR_ROUTE = "stow" and declare bonexr under
-- "DicomWeb": { "Servers": { "bonexr": { "Url": "http://bonexr-host:8000/dicom-web/",
-- "HttpHeaders": { "X-API-Key": "<key>" } } } }.
--
-- Only projection radiographs are sent: bonexr judges nothing else, and its own results
-- (an SR and OT secondary captures, series "bonexr AI results") are never routed back.
-- When the results arrive the study is stable again and its radiographs are sent once
-- more; bonexr sees the same instances and makes no second report.

BONEXR = 'bonexr'       -- the DicomModalities (or DicomWeb.Servers) entry
BONEXR_ROUTE = 'store'  -- 'store' (C-STORE) or 'stow' (STOW-RS)
ROUTED_MODALITIES = { CR = true, DX = true }

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local resources = {}
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality ~= nil and ROUTED_MODALITIES[modality] then
      table.insert(resources, s['ID'])
    end
  end
  if #resources == 0 then
    return
  end
  local body = DumpJson({ Resources = resources, Synchronous = false }, true)
  if BONEXR_ROUTE == 'stow' then
    RestApiPost('/dicom-web/servers/' .. BONEXR .. '/stow', body)
  else
    RestApiPost('/modalities/' .. BONEXR .. '/store', body)
  end
  print('bonexr auto-routing: ' .. #resources .. ' series of a stable study sent')
end
