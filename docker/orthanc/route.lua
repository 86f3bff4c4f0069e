-- Orthanc routing for medgemma-node. docker/compose.yaml's Orthanc loads this very file, and so do
-- the end-to-end tests (tests/peers.py), against a real Orthanc.
--
-- When a study is stable (no instance for StableAge seconds), send its instances to the modality
-- registered as "node" in DicomModalities, leaving out the node's own results coming back: series
-- whose Manufacturer is "medgemma-node" (how the node marks every SR, GSPS and SC it writes, whether
-- it delivered them by C-STORE or STOW-RS) and instances stored by the node's AE title.
local NODE = 'node'
local NODE_MANUFACTURER = 'medgemma-node'

function OnStableStudy(studyId, tags, metadata)
  local nodeAet = ParseJson(RestApiGet('/modalities/' .. NODE .. '/configuration'))['AET']
  local ids = {}
  for _, series in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    if series['MainDicomTags']['Manufacturer'] ~= NODE_MANUFACTURER then
      for _, instanceId in pairs(series['Instances']) do
        local origin = RestApiGet('/instances/' .. instanceId .. '/metadata/RemoteAET')
        if origin ~= nodeAet then
          table.insert(ids, instanceId)
        end
      end
    end
  end
  if #ids > 0 then
    RestApiPost('/modalities/' .. NODE .. '/store', DumpJson(ids, true))
  end
end
